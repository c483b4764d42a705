# Type stub of the CUDA backend module (csrc/bindings/cuda_module.cpp). Device pointers are ints.
def workspace_bytes(nq: int, nr: int, d: int, k: int, precision: int) -> int: ...
def topk_fp32(
    q: int,
    nq: int,
    d: int,
    r: int,
    nr: int,
    r_row_stride: int,
    r_col_stride: int,
    r_dtype: int,
    normalize: bool,
    k: int,
    out_scores: int,
    out_idx: int,
    workspace: int,
    workspace_bytes: int,
    stream: int,
) -> None: ...
def topk_candidates(
    q: int,
    nq: int,
    d: int,
    r: int,
    nr: int,
    r_row_stride: int,
    r_col_stride: int,
    r_dtype: int,
    normalize: bool,
    precision: int,
    kc: int,
    out_approx: int,
    out_idx: int,
    out_err: int,
    workspace: int,
    workspace_bytes: int,
    stream: int,
) -> None: ...
def device_name(device_index: int) -> str: ...
def device_count() -> int: ...
