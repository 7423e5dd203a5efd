"""`flowsr-lp upscale`: real images, every kind of bad input, atomic outputs."""
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

from flowsr_lp import save_flow
from flowsr_lp.cli import main

from conftest import DATA, REFERENCE, need
from helpers import tiny_linf, write_png16


@pytest.fixture
def flow_file(tmp_path_factory):
    return str(save_flow(tiny_linf(3), tmp_path_factory.mktemp("m") / "tiny.safetensors"))


def rgb(path, h=10, w=12, seed=0):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return path


def run(args, capsys):
    code = main(["upscale", "--quiet", *map(str, args)])
    err = capsys.readouterr().err
    return code, err


def _set14_upscales(src, tmp_path, capsys, scales):
    ckpt = need(REFERENCE / "linf-patch-edsr-baseline.pth")
    w, h = Image.open(src).size
    for scale in scales:
        out = tmp_path / f"x{scale}"
        code, err = run([src, "--flow", ckpt, "--scale", scale, "--tau", "0.5", "-o", out], capsys)
        assert code == 0, err
        res = Image.open(out / "comic.png")
        assert res.size == (round(w * float(scale)), round(h * float(scale))) and res.mode == "RGB"
        assert np.asarray(res).std() > 1  # not a blank image


def test_set14_crop_at_scales_2_3p5_8(tmp_path, capsys):
    crop = tmp_path / "in" / "comic.png"
    crop.parent.mkdir()
    Image.open(need(DATA / "Set14" / "HR" / "comic.png")).crop((60, 40, 108, 76)).save(crop)
    _set14_upscales(crop, tmp_path, capsys, ("2", "3.5", "8"))


@pytest.mark.slow
def test_set14_whole_image_at_scale_8(tmp_path, capsys):
    _set14_upscales(need(DATA / "Set14" / "HR" / "comic.png"), tmp_path, capsys, ("8",))


def test_anisotropic_size_and_single_output_file(tmp_path, capsys, flow_file):
    src = rgb(tmp_path / "a.png")
    code, err = run([src, "--flow", flow_file, "--size", "25x19", "-o", tmp_path / "out.png"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "out.png").size == (19, 25)
    assert (tmp_path / "out.png").stat().st_mode & 0o644 == 0o644  # usual permissions, not mkstemp's 0600
    code, err = run([src, "--flow", flow_file, "--scale", "2,3.5", "-o", tmp_path / "o"], capsys)
    assert code == 0 and Image.open(tmp_path / "o" / "a.png").size == (42, 20)


def test_seed_makes_runs_repeatable(tmp_path, capsys, flow_file):
    src = rgb(tmp_path / "a.png")
    outs = []
    for i, seed in enumerate(["3", "3", "4"]):
        run([src, "--flow", flow_file, "--scale", "3", "--tau", "1", "--seed", seed, "-o", tmp_path / f"o{i}"], capsys)
        outs.append(np.asarray(Image.open(tmp_path / f"o{i}" / "a.png")))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


def test_odd_image_modes_are_converted_and_reported(tmp_path, capsys, flow_file):
    d = tmp_path / "in"
    d.mkdir()
    g = np.random.default_rng(0).integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(g, "L").save(d / "gray.png")
    Image.fromarray(np.dstack([g, g, g, g]), "RGBA").save(d / "rgba.png")
    Image.fromarray(g, "L").convert("P").save(d / "pal.png")
    Image.fromarray(g).convert("P").save(d / "pal2.gif")
    write_png16(d / "g16.png", (g.astype(np.uint16) * 257)[:, :, None])
    write_png16(d / "rgb16.png", np.dstack([g, g, g]).astype(np.uint16) * 257)
    (d / "README.txt").write_text("not an image; skipped inside folders")
    code, err = run([d, "--flow", flow_file, "--scale", "2", "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    for name, note in [("gray", "grayscale converted"), ("rgba", "alpha channel dropped"),
                       ("pal", "palette image converted"), ("pal2", "palette image converted"), ("g16", "16-bit grayscale"),
                       ("rgb16", "16-bit colour PNG")]:
        assert f"{name}.{'gif' if name == 'pal2' else 'png'}: {note}" in err
        out = Image.open(tmp_path / "out" / f"{name}.png")
        assert out.mode == "RGB" and out.size == (22, 18)
    assert not (tmp_path / "out" / "README.png").exists()


def test_bad_files_fail_alone(tmp_path, capsys, flow_file):
    good = rgb(tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    missing = tmp_path / "missing.png"
    code, err = run([broken, text, good, missing, "--flow", flow_file, "--scale", "2", "-o", tmp_path / "out"], capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 3
    assert any("broken.png: not a readable image" in line for line in lines)
    assert any("notes.txt: not a readable image" in line for line in lines)
    assert any("missing.png: no such file" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


@pytest.mark.parametrize("scale", ["0", "-2", "abc", "2,0"])
def test_non_positive_scale_is_refused(tmp_path, scale, flow_file, capsys):
    src = rgb(tmp_path / "a.png")
    with pytest.raises(SystemExit) as e:
        main(["upscale", str(src), "--flow", flow_file, f"--scale={scale}", "-o", str(tmp_path / "out")])
    assert e.value.code == 2
    assert "scale" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_megapixel_limit(tmp_path, capsys, flow_file):
    small, big = rgb(tmp_path / "small.png", 8, 8), rgb(tmp_path / "big.png", 40, 50)
    code, err = run([big, small, "--flow", flow_file, "--scale", "4", "--max-megapixels", "0.01",
                     "-o", tmp_path / "out"], capsys)
    assert code == 1
    assert "big.png: output 160x200 is 0.0 MP, over the --max-megapixels limit of 0.01" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small.png"]


@pytest.mark.parametrize("content", [b"junk", None])
def test_wrong_checkpoint_is_one_clear_line(tmp_path, capsys, content):
    src = rgb(tmp_path / "a.png")
    ck = tmp_path / "ck.pth"
    if content is not None:
        ck.write_bytes(content)
    code, err = run([src, "--flow", ck, "--scale", "2", "-o", tmp_path / "out"], capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("flowsr-lp: error: ") and "ck.pth" in errors[0]
    assert not (tmp_path / "out").exists()


def test_no_partial_file_when_writing_fails(tmp_path, capsys, flow_file, monkeypatch):
    src = rgb(tmp_path / "a.png")

    def exploding_save(self, fp, *a, **k):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", exploding_save)
    code, err = run([src, "--flow", flow_file, "--scale", "2", "-o", tmp_path / "out"], capsys)
    assert code == 1 and "disk full" in err  # one error line for the input; the others would still run
    assert list((tmp_path / "out").iterdir()) == []


def test_refuses_to_overwrite_input(tmp_path, capsys, flow_file):
    src = rgb(tmp_path / "a.png")
    code, err = run([src, "--flow", flow_file, "--scale", "2", "-o", tmp_path], capsys)
    assert code == 1 and "overwrite the input" in err
    assert Image.open(src).size == (12, 10)


def test_module_entry_point_help(monkeypatch, capsys):
    """`python -m flowsr_lp upscale --help`, run in this process."""
    monkeypatch.setattr(sys, "argv", ["flowsr_lp", "upscale", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("flowsr_lp", run_name="__main__")
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--flow" in out and "--scale" in out


def test_upscale_with_learned_prior(tmp_path, capsys):
    src = need(DATA / "Set14" / "HR" / "comic.png")
    flow = need(REFERENCE / "linf-patch-edsr-baseline.pth")
    prior = REFERENCE / "linf-patch-edsr-baseline-LP.pth"
    lr = tmp_path / "comic_lr.png"
    Image.open(src).resize((62, 90), Image.BICUBIC).save(lr)
    outs = []
    for i in range(2):  # deterministic: no seed involved
        code, err = run([lr, "--flow", flow, "--prior", prior, "--scale", "3.5", "--tau", "0.8", "-o",
                         tmp_path / f"o{i}"], capsys)
        assert code == 0, err
        assert "--tau is ignored with a learned prior" in err
        outs.append(np.asarray(Image.open(tmp_path / f"o{i}" / "comic_lr.png")))
    assert outs[0].shape == (315, 217, 3) and np.array_equal(outs[0], outs[1])


def test_upscale_srflow_with_its_prior(tmp_path, capsys):
    flow = need(REFERENCE / "srflow-4x-nb4-k2.pth")
    src = rgb(tmp_path / "a.png", 9, 11)
    code, err = run([src, "--flow", flow, "--taps", "0,1,2,3", "--prior", REFERENCE / "srflow-4x-nb4-k2-LP.pth",
                     "-o", tmp_path / "o"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "a.png").size == (44, 36)


def test_mismatched_prior_is_refused(tmp_path, capsys):
    flow = need(REFERENCE / "srflow-4x-nb4-k2.pth")
    src = rgb(tmp_path / "a.png")
    code, err = run([src, "--flow", flow, "--taps", "0,1,2,3", "--prior", REFERENCE / "linf-patch-edsr-baseline-LP.pth",
                     "-o", tmp_path / "o"], capsys)
    assert code == 2 and "do not belong together" in err
