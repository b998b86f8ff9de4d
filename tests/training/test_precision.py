import logging

import pytest

from training import precision

AVX2_ONLY = {"sse4_2", "avx2", "fma"}


@pytest.mark.parametrize(
    "requested, flags, accelerator, warns",
    [
        ("mixed_bfloat16", AVX2_ONLY, False, True),
        ("mixed_bfloat16", AVX2_ONLY | {"avx512_bf16"}, False, False),
        ("mixed_bfloat16", AVX2_ONLY | {"amx_bf16"}, False, False),
        ("mixed_bfloat16", AVX2_ONLY, True, False),  # a GPU or TPU computes
        ("float32", AVX2_ONLY, False, False),
        ("mixed_bfloat16", None, False, False),  # flags unknown: say nothing
    ],
)
def test_warns_only_for_bfloat16_on_a_cpu_without_it(
    requested, flags, accelerator, warns
):
    message = precision.slow_bfloat16_warning(requested, flags, accelerator)
    assert (message is not None) == warns
    if warns:
        assert "avx512_bf16" in message and "--precision float32" in message


def test_reads_the_flags_line_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert precision.cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") is None


def test_the_job_says_it_once(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(precision, "_warned", False)
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        precision.warn_if_slow_bfloat16("mixed_bfloat16")
        precision.warn_if_slow_bfloat16("mixed_bfloat16")
    assert len(caplog.records) == 1
