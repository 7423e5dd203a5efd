"""Latent modules: shapes at any map size, input ablations, loading, and the flow left alone."""
import copy

import pytest
import torch

from flowsr_lp import CheckpointError, SuperResolver, load_prior, save_prior
from flowsr_lp.priors import SRFlowLatentModule, SRFlowPriorConfig

from helpers import SMALL, tiny_linf, tiny_linf_prior, tiny_srflow

@pytest.mark.parametrize("kind", sorted(SMALL))
@pytest.mark.parametrize("hw", [(17, 22), (9, 9), (31, 5), (8, 16)])
def test_linf_prior_any_map_size(kind, hw):
    prior = tiny_linf_prior(kind)
    z0, lr = torch.randn(2, 27, *hw), torch.rand(2, 3, 3 * hw[0] // 2, 3 * hw[1] // 2)
    with torch.no_grad():
        (z,) = prior((z0,), lr)
    assert z.shape == z0.shape and torch.isfinite(z).all()


@pytest.mark.parametrize("inputs", ["both", "prior", "lr"])
def test_input_ablation_keeps_width_and_uses_only_its_inputs(inputs):
    prior = tiny_linf_prior("unet", inputs)
    assert hasattr(prior, "input_proj") == (inputs != "lr") and hasattr(prior, "lr_proj") == (inputs != "prior")
    branch_out = [m.conv5.out_channels for m in (getattr(prior, "input_proj", None),
                  getattr(prior, "lr_proj", [None] * 3)[2]) if m is not None]
    assert sum(branch_out) == 8  # total feature width kept at `dim`
    z0, lr = torch.randn(1, 27, 10, 12), torch.rand(1, 3, 15, 18)
    with torch.no_grad():
        base = prior((z0,), lr)[0]
        z_changed = prior((z0 + 1,), lr)[0]
        lr_changed = prior((z0,), 1 - lr)[0]
    assert (not torch.allclose(base, z_changed)) == (inputs != "lr")
    assert (not torch.allclose(base, lr_changed)) == (inputs != "prior")


def test_srflow_prior_branches_and_lr_variant():
    for with_lr in (False, True):
        torch.manual_seed(0)
        prior = SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=2, with_lr=with_lr)).eval()
        eps, z = torch.randn(1, 6, 14, 18), torch.randn(1, 96, 3, 5)
        lr = torch.rand(1, 3, 7, 9)
        with torch.no_grad():
            out = prior((eps, z), lr)
            out2 = prior((eps, z), 1 - lr)
        assert [o.shape for o in out] == [eps.shape, z.shape]
        assert torch.equal(out[0], out2[0]) != with_lr


@pytest.mark.parametrize("make", [lambda: tiny_linf_prior("swin", "prior"),
                                  lambda: SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=2, with_lr=True))])
def test_project_format_round_trip(tmp_path, make):
    prior = make().eval()
    again = load_prior(save_prior(prior, tmp_path / "p.safetensors"))
    assert again.config == prior.config
    for a, b in zip(prior.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_prior_and_flow_files_are_not_mixed_up(tmp_path):
    from flowsr_lp import load_flow, save_flow

    save_flow(tiny_linf(3), tmp_path / "f.safetensors")
    save_prior(tiny_linf_prior(), tmp_path / "p.safetensors")
    with pytest.raises(CheckpointError, match="not a latent module"):
        load_prior(tmp_path / "f.safetensors")
    with pytest.raises(CheckpointError, match="not a flow"):
        load_flow(tmp_path / "p.safetensors")
    torch.save({"prior_model": {"name": "resnet", "args": {}, "sd": {}}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="'resnet' is not supported"):
        load_prior(tmp_path / "x.pth")


def test_prior_must_match_the_flow():
    with pytest.raises(ValueError, match="do not belong together"):
        SuperResolver(tiny_srflow(4), tiny_linf_prior())
    with pytest.raises(ValueError, match="do not belong together"):
        SuperResolver(tiny_linf(1), tiny_linf_prior())


@pytest.mark.parametrize("make_flow,make_prior", [
    (lambda: tiny_linf(3), lambda: tiny_linf_prior()),
    (lambda: tiny_srflow(4, perturb=0.01), lambda: SRFlowLatentModule(SRFlowPriorConfig(dim=8, depth=2)))])
def test_prior_path_leaves_the_flow_untouched(make_flow, make_prior):
    flow, prior = make_flow(), make_prior()
    flow.requires_grad_(False)
    before = copy.deepcopy(flow.state_dict())
    lr = torch.rand(1, 3, 16, 16)
    SuperResolver(flow, prior).upscale(lr, scale=4)
    # a training step of the prior through the frozen flow
    prior.train()
    opt = torch.optim.SGD(prior.parameters(), lr=0.1)
    with torch.no_grad():
        ctx = flow.condition(lr, (64, 64))
        z0 = flow.initial_prior(lr, ctx)
    loss = flow.decode(prior(z0, lr), ctx).square().mean()
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in flow.parameters())
    assert not flow.training
    after = flow.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in prior.parameters())
