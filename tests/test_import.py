"""`import memlens` must stay cheap: no triton, no CUDA initialization."""

from __future__ import annotations

import json
import subprocess
import sys


def test_import_does_not_load_triton_or_cuda() -> None:
    code = (
        "import sys, json, memlens, numpy as np\n"
        "info = memlens.build_info()\n"
        "q = np.eye(3, 8, dtype=np.float32) + 0.1\n"
        "memlens.cosine_topk(q, q, 2)\n"
        "import torch\n"
        "print(json.dumps({'triton': 'triton' in sys.modules,"
        " 'cuda_init': torch.cuda.is_initialized(), 'info': info}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["triton"] is False
    assert res["cuda_init"] is False
    info = res["info"]
    assert set(info["backends"]) == {"cpu", "cuda", "triton", "torch"}
    assert info["backends"]["torch"]["cpu"] == "available"
