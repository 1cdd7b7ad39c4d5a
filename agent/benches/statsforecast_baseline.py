#!/usr/bin/env python3
"""statsforecast baseline for agent/benches/forecast.rs.

Fits MSTL with an AutoETS trend model (statsforecast's equivalent of the augurs pipeline) to
every series of the input file and writes the forecasts and the wall time of fit + predict.

usage: statsforecast_baseline.py INPUT.json OUTPUT.json

INPUT:  {"horizon": H, "level": 95, "series": [{"id": "...", "seasons": [48, 336], "y": [...]}]}
OUTPUT: {"fit_predict_secs": t, "fit_predict_cpu_secs": c, "warmup_secs": w, "statsforecast": "x.y.z", "n_jobs": 1,
         "forecasts": {"id": {"mean": [...], "lo": [...], "hi": [...]}}}

Series with the same seasons are fitted by one StatsForecast object (its models are per
object). numba compiles on first use, so one untimed warm-up fit runs first; the timed part is
fit + predict of every series, single process (n_jobs=1) like the Rust side.
"""

import json
import sys
import time
from collections import defaultdict

import numpy as np
import pandas as pd
import statsforecast
from statsforecast import StatsForecast
from statsforecast.models import MSTL, AutoETS


def make_model(seasons):
    return MSTL(season_length=list(seasons), trend_forecaster=AutoETS(model="ZZN"))


def frame(series):
    parts = []
    for s in series:
        y = np.asarray(s["y"], dtype=float)
        parts.append(
            pd.DataFrame({"unique_id": s["id"], "ds": np.arange(len(y)), "y": y})
        )
    return pd.concat(parts, ignore_index=True)


def run_group(seasons, series, horizon, level):
    sf = StatsForecast(models=[make_model(seasons)], freq=1, n_jobs=1)
    return sf.forecast(df=frame(series), h=horizon, level=[level])


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    horizon = int(spec["horizon"])
    level = int(spec["level"])
    groups = defaultdict(list)
    for s in spec["series"]:
        groups[tuple(s["seasons"])].append(s)

    warm_start = time.perf_counter()
    for seasons, series in groups.items():
        run_group(seasons, series[:1], horizon, level)
    warmup = time.perf_counter() - warm_start

    forecasts = {}
    started = time.perf_counter()
    cpu_started = time.process_time()
    results = [
        run_group(seasons, series, horizon, level) for seasons, series in groups.items()
    ]
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started

    for result in results:
        result = result.reset_index() if "unique_id" not in result.columns else result
        for uid, rows in result.groupby("unique_id", sort=False):
            forecasts[str(uid)] = {
                "mean": rows["MSTL"].tolist(),
                "lo": rows[f"MSTL-lo-{level}"].tolist(),
                "hi": rows[f"MSTL-hi-{level}"].tolist(),
            }
    with open(sys.argv[2], "w") as f:
        json.dump(
            {
                "fit_predict_secs": elapsed,
                "fit_predict_cpu_secs": cpu,
                "warmup_secs": warmup,
                "statsforecast": statsforecast.__version__,
                "n_jobs": 1,
                "forecasts": forecasts,
            },
            f,
        )


if __name__ == "__main__":
    main()
