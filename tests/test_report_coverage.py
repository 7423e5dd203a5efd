"""Every table says how many images each mean covers, and marks means over fewer images than
the row evaluated (issue 11, item 2): an image whose runs all exploded is not averaged, so a
temperature that explodes more often would otherwise look better on an easier subset."""
from flowsr_lp.evaluate import summarise
from flowsr_lp.report import PARTIAL, PARTIAL_NOTE, coverage, markdown


def _rows(dataset="Set5", scale=4.0):
    rows = []
    for image, psnr in (("a", 30.0), ("b", 20.0), ("c", 25.0)):
        rows.append({"dataset": dataset, "image": image, "scale": scale, "method": "tau=0.5", "run": 0,
                     "finite": True, "inf_rate": 0.0, "psnr": psnr, "ssim": 0.8, "lr_psnr": 40.0, "grid": 0.1})
        for run in range(2):  # at tau=0.9 image b (the hard one) explodes in both runs
            finite = image != "b"
            row = {"dataset": dataset, "image": image, "scale": scale, "method": "tau=0.9", "run": run,
                   "finite": finite, "inf_rate": 0.0 if finite else 100.0}
            if finite:
                row.update(psnr=psnr + 1, ssim=0.7, lr_psnr=39.0, grid=0.2)
            rows.append(row)
    return rows


def test_summary_counts_the_images_each_mean_covers():
    by = {e["method"]: e for e in summarise(_rows())}
    assert by["tau=0.5"]["images"] == 3 and by["tau=0.5"]["covers"]["psnr"] == 3
    assert by["tau=0.9"]["images"] == 3 and by["tau=0.9"]["covers"]["psnr"] == 2
    assert abs(by["tau=0.9"]["inf_rate"] - 100 / 3) < 1e-9
    assert coverage(by["tau=0.5"]) == "3" and coverage(by["tau=0.9"]) == f"2 of 3{PARTIAL}"


def test_the_paper_style_table_says_when_means_cover_different_images():
    md = markdown(summarise(_rows()))
    assert "| Method | Images | PSNR (↑)" in md
    assert "| tau=0.5 | 3 | 25.00 |" in md
    assert f"| tau=0.9 | 2 of 3{PARTIAL} | 28.50{PARTIAL} |" in md  # 28.5 looks better only on the easy images
    assert PARTIAL_NOTE in md


def test_the_cross_set_table_marks_partial_means_too():
    md = markdown(summarise(_rows("Set5") + _rows("Set14", 2.0)))
    grid = md.split("across data sets and scales")[1]
    assert f"28.50{PARTIAL}" in grid and PARTIAL_NOTE in grid


def test_no_mark_when_every_mean_covers_every_image():
    rows = [r for r in _rows() if r["image"] != "b"]
    md = markdown(summarise(rows))
    assert PARTIAL not in md and "| tau=0.9 | 2 |" in md
