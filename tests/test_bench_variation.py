"""benchmarks/bench_variation.py: the equal-diversity comparison (issue 20's acceptance figures)."""
import importlib.util
import math
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_variation", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_variation.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def point(psnr, grid, diversity):
    return {"psnr": psnr, "grid": grid, "diversity": diversity, "inf": 0.0}


def test_a_point_is_compared_with_each_reference_curve_at_its_own_diversity():
    summary = {"tau=0.1": point(30.0, 1.0, 2.0), "tau=0.2": point(28.0, 3.0, 6.0),
               "fixed=0.5": point(29.0, 0.5, 4.0), "fixed=1.0": point(27.0, 2.5, 8.0),
               "fixed=1.5": point(26.0, 9.0, float("nan")),  # every image had < 2 finite draws
               "t=0.5": point(29.5, 1.0, 5.0)}
    out = bench.equal_diversity(summary, "t=0.5", [("tau=", [0.1, 0.2], ""), ("fixed=", [0.5, 1.0, 1.5], "_fixed")])
    # tau: diversity 5 is 3/4 of the way from 2 to 6: PSNR 28.5, grid 2.5, tau 0.175
    assert math.isclose(out["psnr_gain_db"], 1.0) and math.isclose(out["grid_ratio"], 0.4)
    assert math.isclose(out["tau_at_equal_diversity"], 0.175) and out["in_range"]
    # the ablation: halfway from 4 to 8 (the NaN point left out): PSNR 28.5, grid 1.0, t 0.625
    assert math.isclose(out["psnr_gain_db_fixed"], 1.0) and math.isclose(out["grid_ratio_fixed"], 1.0)
    assert math.isclose(out["fixed_at_equal_diversity"], 0.625) and out["in_range_fixed"]


def test_outside_a_reference_curve_the_end_is_used_and_flagged():
    summary = {"tau=0.1": point(30.0, 1.0, 2.0), "tau=0.2": point(28.0, 3.0, 6.0), "t=1.0": point(27.0, 3.0, 9.0)}
    out = bench.equal_diversity(summary, "t=1.0", [("tau=", [0.1, 0.2], ""), ("fixed=", [], "_fixed")])
    assert not out["in_range"] and math.isclose(out["psnr_gain_db"], -1.0) and out["tau_at_equal_diversity"] == 0.2
    assert "psnr_gain_db_fixed" not in out  # no ablation without a scale head


def test_the_fixed_scale_ablation_drops_every_scale_head_and_keeps_mu():
    import torch

    from flowsr_lp.nets.scale_head import with_config
    from flowsr_lp.priors import LINFLatentModule, LINFPriorConfig

    torch.manual_seed(0)
    prior = with_config(LINFLatentModule(LINFPriorConfig(generator="unet", dim=8, depth=2, scale_head=True)),
                        scale_stats=(2.0, 4.0))
    prior = with_config(prior, specialists=(4.0,)).eval()  # a module with a specialist, each with a head
    with torch.no_grad():
        for p in prior.specialists[0].parameters():
            p.add_(0.1 * torch.randn_like(p))
        for side in (16, 14):  # x4: the specialist alone; x3.5: the blend
            z0, lr = torch.randn(1, 27, side, side), torch.rand(1, 3, 12, 12)
            mu, log_sigma = prior.distribution((z0,), lr)
            mu_plain, none = bench.without_head(prior).distribution((z0,), lr)
            assert log_sigma is not None and none is None
            torch.testing.assert_close(mu_plain[0], mu[0])
