#!/usr/bin/env python3
"""Rebuild the held-out demand series of this directory from the PyPI wheels that ship them.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip download --no-deps \
        pmdarima==2.1.1 statsmodels==0.15.0 -d /tmp/wheels
    python3 agent/data/heldout/extract.py /tmp/wheels agent/data/heldout

Standard library only (the wheels are read as zip files, nothing is installed). Series whose
real step is longer than a day are played as 5-minute steps (the step of the shared
social-media series); the values are unchanged. See README.md for sources and licences.
"""

import csv
import datetime as dt
import glob
import io
import re
import sys
import tarfile
import zipfile

FIVE_MIN = dt.timedelta(minutes=5)
PLAYED_FROM = dt.datetime(2017, 1, 2)
# At most this many points per file (the length of the shared ELB and EC2 series).
MAX_POINTS = 4032


def wheel(directory, name):
    [path] = glob.glob(f"{directory}/{name}-*.whl")
    return zipfile.ZipFile(path)


def write(path, rows):
    with open(path, "w", newline="") as out:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["timestamp", "value"])
        for t, v in rows:
            w.writerow([t.strftime("%Y-%m-%d %H:%M:%S"), f"{v:.12g}"])


def played(values, skip=()):
    """Values at 5-minute steps; indices in `skip` are left out (a gap in the file)."""
    return [
        (PLAYED_FROM + i * FIVE_MIN, v)
        for i, v in enumerate(values)
        if i not in skip
    ]


def main(wheels, out):
    pm = wheel(wheels, "pmdarima")
    # taylor: half-hourly electricity demand, England and Wales, from Monday 5 June 2000.
    src = pm.read("pmdarima/datasets/taylor.py").decode()
    body = src[src.index("np.array([") : src.index("]).astype")]
    taylor = [float(x) for x in re.findall(r"\d+", body)]
    assert len(taylor) == 4032, len(taylor)
    start = dt.datetime(2000, 6, 5)
    write(
        f"{out}/taylor.csv",
        [(start + i * dt.timedelta(minutes=30), v) for i, v in enumerate(taylor)],
    )

    # msft_volume: daily traded volume of MSFT, the last MAX_POINTS trading days.
    with tarfile.open(fileobj=io.BytesIO(pm.read("pmdarima/datasets/data/msft.tar.gz"))) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("msft.csv"))
        rows = list(csv.DictReader(io.TextIOWrapper(tar.extractfile(member))))
    volume = [float(r["Volume"]) for r in rows][-MAX_POINTS:]
    write(f"{out}/msft_volume.csv", played(volume))

    # sunspots: monthly mean sunspot numbers, from pmdarima (R's datasets::sunspots).
    import gzip

    text = gzip.decompress(pm.read("pmdarima/datasets/data/sunspots.txt.gz")).decode()
    sunspots = [float(x) for x in text.split()]
    write(f"{out}/sunspots.csv", played(sunspots[-MAX_POINTS:]))

    # co2: weekly Mauna Loa CO2 (statsmodels); its missing weeks stay gaps in the file.
    sm = wheel(wheels, "statsmodels")
    rows = list(csv.DictReader(io.StringIO(sm.read("statsmodels/datasets/co2/co2.csv").decode())))
    values = [float(r["co2"]) if r["co2"] else None for r in rows][-MAX_POINTS:]
    missing = {i for i, v in enumerate(values) if v is None}
    write(f"{out}/co2.csv", played([v or 0.0 for v in values], skip=missing))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
