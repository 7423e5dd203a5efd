"""The test suite itself (issue 11, item 18): under CI a missing ../shared fails instead of
skipping, so the reference tests can never silently disappear."""
import pytest
from conftest import need


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_missing_shared_files_fail_under_ci(tmp_path, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        need(tmp_path / "shared" / "reference" / "metrics.vectors.pt")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_missing_shared_files_skip_elsewhere(tmp_path, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="is absent"):
        need(tmp_path / "absent")
    assert need(tmp_path) == tmp_path
