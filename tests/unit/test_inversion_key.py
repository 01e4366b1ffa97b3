"""The inversion cache key: every part of the conditioning a model may read is in it."""
import torch

from temporal_adapter.adapter_core.inversion import conditioning_digest


def test_conditioning_digest_covers_pooled_output_and_sizes():
    """SDXL builds its ADM input from the pooled output and CLIPTextEncodeSDXL's sizes: conditionings that
    differ there only must not share a cached inversion."""
    text, pooled = torch.randn(1, 77, 2048), torch.randn(1, 1280)
    base = [[text, {"pooled_output": pooled}]]
    assert conditioning_digest(base) == conditioning_digest([[text.clone(), {"pooled_output": pooled.clone()}]])
    others = [[[text, {"pooled_output": torch.zeros_like(pooled)}]],
              [[text, {"pooled_output": pooled, "width": 1024}]],
              [[text, {"pooled_output": pooled, "width": 768}]],
              [[text, {}]]]
    digests = {conditioning_digest(c) for c in [base] + others}
    assert len(digests) == 1 + len(others)
    assert conditioning_digest([[text, {"control": object()}]]) == conditioning_digest([[text, {"control": object()}]])
