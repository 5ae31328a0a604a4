"""CPU cost of each sampler with a tiny reference backbone, against the cached ancestral
baseline in the same run: network calls, categorical draws, wall time and the speed-up."""
import pytest
import torch

from mdm_ext.models import Transformer, TransformerConfig
from sampler_setup import samplers

VOCAB, LENGTH, BATCH, STEPS = 1024, 128, 8, 512
MASK = VOCAB
SAMPLERS = samplers(LENGTH, (STEPS,))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Transformer(TransformerConfig.preset("tiny", vocab_size=VOCAB + 1, max_len=LENGTH)).eval()


@pytest.fixture(scope="module")
def baseline_seconds(model):
    result = SAMPLERS[f"ancestral_N{STEPS}"](model, batch_size=BATCH, mask_id=MASK, seed=0)
    return min(result.seconds, SAMPLERS[f"ancestral_N{STEPS}"](model, batch_size=BATCH, mask_id=MASK,
                                                               seed=0).seconds)


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler(benchmark, model, baseline_seconds, name):
    results = []
    benchmark.pedantic(lambda: results.append(SAMPLERS[name](model, batch_size=BATCH, mask_id=MASK, seed=0)),
                       rounds=3, warmup_rounds=0)
    last = results[-1]
    benchmark.extra_info.update(batch=BATCH, length=LENGTH, vocab=VOCAB, nfe=last.nfe,
                                categorical_draws=last.categorical_draws,
                                speedup_vs_ancestral=baseline_seconds / benchmark.stats.stats.median)
    print(f"\n{name}: {benchmark.stats.stats.median * 1e3:.0f} ms, nfe {last.nfe}, draws "
          f"{last.categorical_draws}, speed-up vs ancestral N={STEPS} "
          f"{benchmark.extra_info['speedup_vs_ancestral']:.2f}x")
