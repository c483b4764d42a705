# Type stub of the compiled CPU core (csrc/bindings/cpu_module.cpp). Pointers are ints.
openmp: bool

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
    num_threads: int,
    simd: int,
    state_bytes: int = 0,
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
    num_threads: int,
    simd: int,
    state_bytes: int = 0,
) -> None: ...
def rerank_fp32(
    q: int,
    nq: int,
    d: int,
    r: int,
    nr: int,
    r_row_stride: int,
    r_col_stride: int,
    r_dtype: int,
    normalize: bool,
    idx: int,
    kc: int,
    out_scores: int,
    num_threads: int,
    simd: int,
) -> None: ...
def detect_simd() -> int: ...
def simd_name(level: int) -> str: ...
def simd_compiled(level: int) -> bool: ...
def max_threads() -> int: ...
