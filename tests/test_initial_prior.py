"""The every-scale initial prior (ours): the paper's LINF initial prior carries nothing at odd
integer scales; the "antialiased" variant does, and the latent module's config selects it."""
import pytest
import torch
import torch.nn.functional as F

from flowsr_lp.pipeline import SuperResolver
from flowsr_lp.priors import LINFLatentModule, LINFPriorConfig

from helpers import tiny_linf, tiny_srflow


def smooth_lr(h: int = 12, w: int = 15) -> torch.Tensor:
    """A smooth photo-like LR (not white noise) in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    return F.interpolate(torch.rand(1, 3, h // 3, w // 3, generator=g), (h, w), mode="bicubic").clamp(0, 1)


def zero_residual_latent(flow, ctx, like):
    return flow.encode_patches(torch.zeros_like(like), ctx)[0]


@pytest.mark.parametrize("scale", [2, 3, 4, 5])
def test_paper_prior_is_empty_exactly_at_odd_integer_scales_and_antialiased_never(scale):
    flow, lr = tiny_linf(3), smooth_lr()
    with torch.no_grad():
        ctx = flow.condition(lr, (12 * scale, 15 * scale))
        (paper,) = flow.initial_prior(lr, ctx)
        (ours,) = flow.initial_prior(lr, ctx, "antialiased")
        empty = zero_residual_latent(flow, ctx, paper)
    paper_gap, our_gap = (paper - empty).abs().max(), (ours - empty).abs().max()
    assert (paper_gap < 1e-5) == (scale % 2 == 1)
    assert our_gap > 1e-3
    assert not torch.allclose(paper, ours)


def test_default_kind_is_the_paper_prior():
    flow, lr = tiny_linf(3), smooth_lr()
    with torch.no_grad():
        ctx = flow.condition(lr, (48, 60))
        assert torch.equal(flow.initial_prior(lr, ctx)[0], flow.initial_prior(lr, ctx, "paper")[0])


def test_the_latent_module_config_selects_the_initial_prior():
    flow, lr = tiny_linf(3), smooth_lr()
    torch.manual_seed(0)
    paper = LINFLatentModule(LINFPriorConfig(dim=8, depth=2)).eval()
    ours = LINFLatentModule(LINFPriorConfig(dim=8, depth=2, initial_prior="antialiased")).eval()
    ours.load_state_dict(paper.state_dict())  # same weights: only the initial prior differs
    with torch.no_grad():
        a = SuperResolver(flow, paper).upscale(lr, scale=3)
        b = SuperResolver(flow, ours).upscale(lr, scale=3)
    assert not torch.allclose(a, b)
    assert LINFPriorConfig.from_dict(ours.config.to_dict()).initial_prior == "antialiased"


def test_unknown_initial_priors_are_refused():
    flow, lr = tiny_linf(3), smooth_lr()
    with pytest.raises(ValueError, match="initial_prior"):
        LINFLatentModule(LINFPriorConfig(dim=8, depth=2, initial_prior="bicubic"))
    with torch.no_grad(), pytest.raises(ValueError, match="initial prior"):
        flow.initial_prior(lr, flow.condition(lr, (24, 30)), "bicubic")
    srflow = tiny_srflow(4)
    lr = torch.rand(1, 3, 8, 8)
    with torch.no_grad(), pytest.raises(ValueError, match="only the paper"):
        srflow.initial_prior(lr, srflow.condition(lr, (32, 32)), "antialiased")


def test_the_bundled_linf_prior_uses_the_every_scale_initial_prior():
    from flowsr_lp import load_prior
    from flowsr_lp.checkpoints import read_checkpoint
    from flowsr_lp.hub.resolve import bundled_path

    path = bundled_path("linf-small-lp")
    assert load_prior(path).config.initial_prior == "antialiased"
    stages = read_checkpoint(path)[1]["training"]["stages"]
    assert [s["recipe"] for s in stages] == [f"configs/cpu/linf-small-lp{s}.yaml" for s in ("", "-ft", "-ft2", "-ft3",
                                                                                             "-stats", "-x4", "-x4g",
                                                                                             "-x4nl", "-specialists",
                                                                                             "-residual")]
    without_steps = (4, 8, 9)  # v4's BatchNorm statistics per scale; the specialist, with everyone's statistics;
    #                            v7's residual correlation
    assert all((s["steps"] == 0) == (i in without_steps) for i, s in enumerate(stages))
    assert all(s["seconds"] > 0 for i, s in enumerate(stages) if i not in without_steps)
    assert all(s["final"].get("l1") for s in stages[:3]) and stages[3]["final"].get("l2")  # v4: L2 in stage 4
    assert stages[2]["final"].get("scale_nll") and stages[3]["final"].get("scale_nll")  # the head, with mu
    assert all("BatchNorm statistics" in stages[i]["perceptual"] for i in without_steps[:2])
    assert "residual correlation" in stages[9]["perceptual"] and load_prior(path).config.residual_reach == 1
    assert stages[5]["final"].get("l2") and stages[5]["final"].get("scale_nll")  # v5: the x4 module, L2,
    assert stages[6]["final"].get("l2") and stages[6]["final"].get("grad")  # then with image gradients,
    assert stages[7]["final"].get("l2") and not stages[7]["final"].get("latent")  # v6: then without the latent L1
    assert load_prior(path).config.specialists == (4,)
    assert load_prior(path).config.scale_stats == (1, 1.5, 2, 3, 4, 6, 8)
