"""Where a run's forecasts go wrong: MAE by horizon step on validation and test, per model, and
the 60-minute (last step) test MAE by hour of day of the forecast target.

Not a test. Reads a run directory as ``trafficcast train`` writes it (``model.pt`` and, when
there, ``fc_lstm.pt``) and the data it was trained on::

    python bench/errors.py app/bundled/metr-la-week --data data/sample/metr-la-week.h5

Prints one JSON line per (split, model) with ``mae_by_step`` and one per hour of day with each
model's last-step MAE and the number of test windows whose target falls in that hour.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trafficcast.app.pipeline import load_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run = load_run(args.run, args.data)
    speeds, prepared, source, models = run.speeds, run.prepared, run.source, run.models
    scaler = run.scaler
    last = prepared.horizon - 1
    hours = np.asarray(speeds.index.hour)

    for split in ("val", "test"):
        errors: dict[str, list[torch.Tensor]] = {name: [] for name in models}
        masks, target_hours = [], []
        with torch.inference_mode():
            for starts in source.starts_batches(split):
                batch = source.batch_at(starts)
                for name, model in models.items():
                    pred = model(batch.x)[..., 0] * scaler.std + scaler.mean
                    errors[name].append((pred - batch.y_raw).abs())  # (B, H, N)
                masks.append(batch.y_mask.float())
                target_hours.append(torch.from_numpy(hours[starts + prepared.seq_len + last]))
        mask = torch.cat(masks)
        by_model = {name: torch.cat(e) * mask for name, e in errors.items()}
        for name, err in by_model.items():
            per_step = (err.sum((0, 2)) / mask.sum((0, 2))).tolist()
            print(json.dumps({"split": split, "model": name,
                              "mae_by_step": [round(v, 3) for v in per_step]}))  # fmt: skip
        if split != "test":
            continue
        hour_of = torch.cat(target_hours)
        for hour in range(24):
            rows = hour_of == hour
            if not bool(rows.any()):
                continue
            observed = mask[rows, last].sum()
            line = {"split": split, "hour": hour, "windows": int(rows.sum())}
            for name, err in by_model.items():
                line[f"{name}_mae_last_step"] = round(float(err[rows, last].sum() / observed), 3)
            print(json.dumps(line))


if __name__ == "__main__":
    main()
