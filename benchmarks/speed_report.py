"""Ratios, tables and target checks for `layer_speed.py` results.

A result is a dict (one JSON line) for one step function: its configuration
(`tokens`, `precision`, `xla`, `block_experts`, `impl`, `num_experts`,
`capacity_factor`, `slots_per_expert`) and timings (`best_ms`, `median_ms`,
`median_cpu_ms`, the per-round `wall_ms` and `cpu_ms`). `add_ratios` adds the
ratios that the tables print.
"""

import sys

IMPLEMENTATIONS = (
    "dense",
    "floor",
    "floor2d",
    "gather",
    "einsum",
    "sorted",
    "dropless",
    "mg",
)
ROUTED = ("gather", "einsum", "sorted", "dropless", "mg")

# Performance targets from the issue, checked at the end of a run.
FLOOR_TOLERANCE = 1.05  # gather / floor, everywhere
DENSE_TOLERANCE = 1.10  # gather / dense, at cf 1.0 with >= 1024 tokens/expert
DENSE_TARGET_TOKENS_PER_EXPERT = 1024
MODEL_GARDEN_SPEEDUP = 1.4  # MG / gather, with >= 256 tokens/expert
MODEL_GARDEN_TARGET_TOKENS_PER_EXPERT = 256
BFLOAT16_SPEEDUP = 1.75  # float32 / mixed_bfloat16, gather
# Sorted dispatch and dropless routing (issue 11).
SORTED_DENSE_TOLERANCE = 1.10  # dropless and cf-1.0 paths / dense
SORTED_TARGET_TOKENS_PER_EXPERT = 512
DROPLESS_GATHER_TOLERANCE = 1.05  # dropless / gather at cf 1.0, everywhere
# A row whose wall-time and CPU-time ratios differ by more than this was
# disturbed by other work on the machine; its verdict is flagged as NOISY.
NOISE_TOLERANCE = 0.10


def find_record(records, like, **fields):
    keys = ("tokens", "precision", "xla", "block_experts")
    wanted = {**{key: like[key] for key in keys}, **fields}
    for record in records:
        if all(record[key] == value for key, value in wanted.items()):
            return record
    return None


def ratio(numerator, denominator, key="best_ms"):
    if numerator is None or denominator is None:
        return None
    return numerator[key] / denominator[key]


def add_ratios(records):
    """Ratios to the dense FFN and floor of the same block, and MG / ours."""
    for record in records:
        dense = find_record(records, record, impl="dense")
        floor = find_record(
            records,
            record,
            impl="floor",
            capacity_factor=record["capacity_factor"],
        )
        model_garden = find_record(
            records, record, impl="mg", capacity_factor=record["capacity_factor"]
        )
        gather_at_one = find_record(records, record, impl="gather", capacity_factor=1.0)
        record["vs_dense"] = ratio(record, dense)
        record["cpu_vs_dense"] = ratio(record, dense, "median_cpu_ms")
        sorted_impl = record["impl"] in ("sorted", "dropless")
        record["vs_gather_1"] = ratio(record, gather_at_one) if sorted_impl else None
        record["cpu_vs_gather_1"] = (
            ratio(record, gather_at_one, "median_cpu_ms") if sorted_impl else None
        )
        routed = record["impl"] in ROUTED or record["impl"] == "floor2d"
        record["vs_floor"] = ratio(record, floor) if routed else None
        record["cpu_vs_floor"] = (
            ratio(record, floor, "median_cpu_ms") if routed else None
        )
        record["mg_over_this"] = (
            ratio(model_garden, record)
            if record["impl"] in ("gather", "einsum")
            else None
        )


def format_ratio(value):
    return "-" if value is None else f"{value:.2f}"


TABLE_COLUMNS = (
    ("impl", 7),
    ("N", 4),
    ("cf", 5),
    ("slots/N", 8),
    ("ms best", 8),
    ("ms med", 8),
    ("tok/s", 7),
    ("x dense", 8),
    ("x floor", 8),
    ("MG/this", 8),
    ("x g1.0", 7),
    ("cpu x dense", 12),
    ("cpu x floor", 12),
    ("others", 7),
)


def table_row(record):
    tokens_per_second = record["tokens"] / (record["best_ms"] / 1e3)
    return (
        record["impl"],
        "-" if record["num_experts"] is None else str(record["num_experts"]),
        "-"
        if record["capacity_factor"] is None
        else f"{record['capacity_factor']:.2f}",
        "-" if record["slots_per_expert"] is None else str(record["slots_per_expert"]),
        f"{record['best_ms']:.1f}",
        f"{record['median_ms']:.1f}",
        f"{tokens_per_second / 1e3:.1f}k",
        format_ratio(record["vs_dense"]),
        format_ratio(record["vs_floor"]),
        format_ratio(record["mg_over_this"]),
        format_ratio(record.get("vs_gather_1")),
        format_ratio(record["cpu_vs_dense"]),
        format_ratio(record["cpu_vs_floor"]),
        format_ratio(record.get("median_other_cores")),
    )


def format_line(cells):
    return "  ".join(
        cell.rjust(width) if index else cell.ljust(width)
        for index, (cell, (_, width)) in enumerate(
            zip(cells, TABLE_COLUMNS, strict=True)
        )
    )


IMPL_ORDER = {impl: index for index, impl in enumerate(IMPLEMENTATIONS)}


def table_sort_key(record):
    return (
        record["block_experts"],
        record["impl"] != "dense",
        record["capacity_factor"] or 0.0,
        IMPL_ORDER[record["impl"]],
    )


def print_table(records):
    if not records:
        return
    first = records[0]
    rounds = len(first["wall_ms"])
    print(
        f"\n== {first['tokens']} tokens, {first['precision']}, XLA "
        f"{first['xla']}: best of {rounds} (ms, tok/s, ratios); CPU ratios "
        "from median process CPU time; dense and floor from the same N block; "
        "others: median cores busy with other processes during the steps =="
    )
    print(format_line([title for title, _ in TABLE_COLUMNS]))
    block = None
    for record in sorted(records, key=table_sort_key):
        if block is not None and record["block_experts"] != block:
            print()
        block = record["block_experts"]
        print(format_line(table_row(record)))
    sys.stdout.flush()


# ---------------------------------------------------------------- parent summary


def bfloat16_speedups(records):
    """(fp32 record, bf16 record) pairs for the same configuration."""
    keys = ("tokens", "xla", "block_experts", "impl", "capacity_factor")
    float32 = {
        tuple(r[k] for k in keys): r for r in records if r["precision"] == "float32"
    }
    pairs = []
    for record in records:
        if record["precision"] == "mixed_bfloat16":
            match = float32.get(tuple(record[k] for k in keys))
            if match:
                pairs.append((match, record))
    return pairs


def print_bfloat16_speedups(records):
    pairs = bfloat16_speedups(records)
    if not pairs:
        return
    print(
        "\n== mixed_bfloat16 speed-up = float32 time / bf16 time (separate "
        "processes, run one after the other) =="
    )
    print("tokens  XLA  impl     N    cf    fp32 ms  bf16 ms  best x  cpu-median x")
    for float32, bfloat16 in sorted(pairs, key=lambda p: summary_key(p[1])):
        print(
            f"{float32['tokens']:>6}  {float32['xla']:>3}  {float32['impl']:<7}"
            f"{describe_experts(float32):>4}  {describe_cf(float32):>5}"
            f"{float32['best_ms']:>9.1f}{bfloat16['best_ms']:>9.1f}"
            f"{ratio(float32, bfloat16):>8.2f}"
            f"{ratio(float32, bfloat16, 'median_cpu_ms'):>14.2f}"
        )


def summary_key(record):
    return (record["tokens"], record["xla"], *table_sort_key(record))


def describe_experts(record):
    return "-" if record["num_experts"] is None else str(record["num_experts"])


def describe_cf(record):
    cf = record["capacity_factor"]
    return "-" if cf is None else f"{cf:.2f}"


def describe(record):
    return (
        f"{record['tokens']} tok {record['precision']} XLA {record['xla']} "
        f"N={record['num_experts']} cf={describe_cf(record)}"
    )


def is_noisy(value, cpu_value):
    """Wall and CPU ratios disagree: other work on the machine disturbed it."""
    return cpu_value is not None and abs(value / cpu_value - 1) > NOISE_TOLERANCE


def check_lines(checks):
    """`checks`: (record, value, cpu value, passed) -> lines for the misses and
    for the rows whose wall and CPU ratios disagree (verdict uncertain)."""
    lines = []
    for record, value, cpu_value, passed in checks:
        noisy = is_noisy(value, cpu_value)
        if noisy or not passed:
            label = ("MISS" if not passed else "met ") + (" NOISY" if noisy else "")
            cpu = "-" if cpu_value is None else f"{cpu_value:.2f}"
            lines.append(f"      {label} {describe(record)}: {value:.2f} (cpu {cpu})")
    return lines


def print_target(title, checks):
    if not checks:
        print(f"  {title}: not measured")
        return
    misses = sum(not passed for _, _, _, passed in checks)
    noisy = sum(is_noisy(value, cpu) for _, value, cpu, _ in checks)
    values = [value for _, value, _, _ in checks]
    verdict = "MET" if not misses else f"MISSED in {misses}/{len(checks)}"
    if noisy:
        verdict += f", {noisy} NOISY (wall and CPU ratios differ > {NOISE_TOLERANCE})"
    print(
        f"  {title}: {verdict} (range {min(values):.2f}-{max(values):.2f} over "
        f"{len(checks)})"
    )
    for line in check_lines(checks):
        print(line)


def tokens_per_expert(record):
    return record["tokens"] / record["num_experts"]


def print_targets(records):
    """The issue's targets for the gather `SwitchFFN`, on best wall time."""
    gather = [r for r in records if r["impl"] == "gather"]
    print("\n== Targets (gather SwitchFFN; best wall time, CPU ratio in parens) ==")
    print_target(
        f"gather / floor <= {FLOOR_TOLERANCE}",
        [
            (r, r["vs_floor"], r["cpu_vs_floor"], r["vs_floor"] <= FLOOR_TOLERANCE)
            for r in gather
            if r["vs_floor"] is not None
        ],
    )
    print_target(
        f"gather / dense <= {DENSE_TOLERANCE} at cf 1.0, tokens/N >= "
        f"{DENSE_TARGET_TOKENS_PER_EXPERT}",
        [
            (r, r["vs_dense"], r["cpu_vs_dense"], r["vs_dense"] <= DENSE_TOLERANCE)
            for r in gather
            if r["vs_dense"] is not None
            and r["capacity_factor"] == 1.0
            and tokens_per_expert(r) >= DENSE_TARGET_TOKENS_PER_EXPERT
        ],
    )
    model_garden_checks = [
        (r, r["mg_over_this"], cpu_model_garden_ratio(records, r))
        for r in gather
        if r["mg_over_this"] is not None
    ]
    print_target(
        f"MG / gather >= {MODEL_GARDEN_SPEEDUP} where tokens/N >= "
        f"{MODEL_GARDEN_TARGET_TOKENS_PER_EXPERT}",
        [
            (r, value, cpu, value >= MODEL_GARDEN_SPEEDUP)
            for r, value, cpu in model_garden_checks
            if tokens_per_expert(r) >= MODEL_GARDEN_TARGET_TOKENS_PER_EXPERT
        ],
    )
    print_target(
        "MG / gather > 1 everywhere",
        [(r, value, cpu, value > 1.0) for r, value, cpu in model_garden_checks],
    )
    print_target(
        f"gather fp32 / bf16 >= {BFLOAT16_SPEEDUP}",
        [
            (
                bf16,
                ratio(fp32, bf16),
                ratio(fp32, bf16, "median_cpu_ms"),
                ratio(fp32, bf16) >= BFLOAT16_SPEEDUP,
            )
            for fp32, bf16 in bfloat16_speedups(gather)
        ],
    )


def print_sorted_targets(records):
    """Issue 11's targets for sorted dispatch and dropless routing."""
    dropless = [r for r in records if r["impl"] == "dropless"]
    at_one = [
        r
        for r in records
        if r["impl"] in ("gather", "sorted") and r["capacity_factor"] == 1.0
    ]
    print("\n== Targets (sorted dispatch, dropless; best wall time, CPU in parens) ==")
    print_target(
        f"dropless / dense <= {SORTED_DENSE_TOLERANCE} where tokens/N >= "
        f"{SORTED_TARGET_TOKENS_PER_EXPERT}",
        [
            (
                r,
                r["vs_dense"],
                r["cpu_vs_dense"],
                r["vs_dense"] <= SORTED_DENSE_TOLERANCE,
            )
            for r in dropless
            if r["vs_dense"] is not None
            and tokens_per_expert(r) >= SORTED_TARGET_TOKENS_PER_EXPERT
        ],
    )
    print_target(
        f"dropless / gather cf 1.0 <= {DROPLESS_GATHER_TOLERANCE} everywhere",
        [
            (
                r,
                r["vs_gather_1"],
                r["cpu_vs_gather_1"],
                r["vs_gather_1"] <= DROPLESS_GATHER_TOLERANCE,
            )
            for r in dropless
            if r["vs_gather_1"] is not None
        ],
    )
    print_target(
        f"capacity path (gather, sorted) cf 1.0 / dense <= "
        f"{SORTED_DENSE_TOLERANCE} where tokens/N >= "
        f"{SORTED_TARGET_TOKENS_PER_EXPERT}",
        [
            (
                r,
                r["vs_dense"],
                r["cpu_vs_dense"],
                r["vs_dense"] <= SORTED_DENSE_TOLERANCE,
            )
            for r in at_one
            if r["vs_dense"] is not None
            and tokens_per_expert(r) >= SORTED_TARGET_TOKENS_PER_EXPERT
        ],
    )


def cpu_model_garden_ratio(records, record):
    model_garden = find_record(
        records, record, impl="mg", capacity_factor=record["capacity_factor"]
    )
    return ratio(model_garden, record, "median_cpu_ms")
