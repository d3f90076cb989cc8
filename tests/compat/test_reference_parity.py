"""Every fixture in tests/fixtures/reference/ passes `tools/convert_checkpoint.py --verify-fixture` (<= 1e-4)."""


def test_verify_fixture(reference_fixture, verify_cli):
    report = verify_cli(reference_fixture)
    assert report["exit_code"] == 0, report
    assert report["ok"] and report["max_abs_diff"] <= 1e-4, report
    assert report["outputs"], "a fixture must compare at least one output"
