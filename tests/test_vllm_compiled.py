"""vLLM with torch.compile on (the default outside these tests' eager engines) runs our linear layers as custom ops:
the model compiles as one graph (vLLM compiles with fullgraph, so a graph break inside a layer would fail
here) and its greedy tokens equal the eager engine's. Real vLLM CPU engine, one process per checkpoint."""

from __future__ import annotations

import pytest
from helpers import result_of, run_python

from sparseflow.compress import compress_gqsa, compress_nm
from sparseflow.compressors.nm import NMRecipe

PROMPTS = [[1, 2, 3, 4, 5], [511, 0, 17, 9, 250, 33, 8]]


def _eager_and_compiled(model_dir) -> dict:
    code = f"""
    import json, os
    if __name__ == "__main__":
        from sparseflow.serve import generate_greedy
        eager = generate_greedy({str(model_dir)!r}, {PROMPTS!r}, max_tokens=8)
        compiled = generate_greedy({str(model_dir)!r}, {PROMPTS!r}, max_tokens=8, enforce_eager=False)
        print("RESULT " + json.dumps({{"eager": eager, "compiled": compiled}}), flush=True)
        os._exit(0)  # vLLM 0.32 (CPU) can abort during interpreter teardown after the work is done
    """
    return result_of(run_python(code, env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}, timeout=900))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gqsa", "nm-2of4-int4"])
def test_compiled_engine_matches_eager(fmt, tiny_llama_dir, tmp_path):
    if fmt == "gqsa":
        model = compress_gqsa(tiny_llama_dir, tmp_path / fmt, progress=False)
    else:
        model = compress_nm(tiny_llama_dir, tmp_path / fmt, NMRecipe(n=2, m=4, value_format="int4", group_size=32),
                            progress=False)
    out = _eager_and_compiled(model)
    assert out["compiled"] == out["eager"]
