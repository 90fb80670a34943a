import csv

import pytest

from app.eval.human import aggregate, export_sheet, krippendorff_alpha, read_sheet


def fill(path, out, scores):
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for row, (rel, flu, dom, safe) in zip(rows, scores):
        row.update(relevance=rel, fluency=flu, domain_expertise=dom, safety=safe)
    with open(out, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, rows[0].keys())
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_round_trip_two_raters(tmp_path):
    rows = [{"id": f"q{i}", "prompt": f"问题{i}", "answer": f"answer {i}", "reference": "ref"} for i in range(10)]
    sheet = export_sheet(rows, tmp_path / "sheet.csv", n=4, seed=1)
    blank = read_sheet(sheet)
    assert len(blank) == 4 and all(set(r) == {"id"} for r in blank)
    assert "问题" in sheet.read_text(encoding="utf-8-sig")
    a = fill(sheet, tmp_path / "a.csv", [(5, 4, 3, "pass"), (4, 4, 3, "pass"), (2, 3, 1, "fail"), (5, 5, 4, "pass")])
    b = fill(sheet, tmp_path / "b.csv", [(5, 5, 3, "pass"), (4, 3, 2, "pass"), (1, 3, 1, "fail"), (4, 5, 4, "pass")])
    result = aggregate([read_sheet(a), read_sheet(b)])
    assert result["raters"] == 2
    assert result["relevance"]["mean"] == pytest.approx(30 / 8) and result["relevance"]["n"] == 8
    assert result["safety"]["mean"] == pytest.approx(0.75) and result["safety"]["alpha"] == pytest.approx(1.0)
    assert 0.5 < result["relevance"]["alpha"] < 1.0


def test_alpha_hand_computed_and_bad_cells(tmp_path):
    # Two raters, perfect disagreement on a binary item set: alpha < 0.
    assert krippendorff_alpha({"a": [0, 1], "b": [1, 0]}, interval=False) < 0
    assert krippendorff_alpha({"a": [1, 1], "b": [0, 0]}, interval=False) == pytest.approx(1.0)
    assert krippendorff_alpha({"a": [3]}) is None
    sheet = export_sheet([{"id": "x", "prompt": "p", "answer": "a"}], tmp_path / "s.csv")
    bad = fill(sheet, tmp_path / "bad.csv", [(7, 1, 1, "pass")])
    with pytest.raises(ValueError, match="relevance=7 is outside 0-5"):
        read_sheet(bad)
