"""Train, evaluate, predict and calibrate: the jobs behind ``trafficcast train|evaluate|predict|calibrate``.

This is where the packages meet: ``data`` reads and windows the speeds, ``graph`` turns
distances into supports, ``models`` trains and scores. Everything here works from a run
directory that holds what a run produced:

``RUN_DIR/model.pt``      the DCRNN checkpoint (self-describing; serves forecasts)
``RUN_DIR/fc_lstm.pt``    the FC-LSTM baseline's checkpoint
``RUN_DIR/gru.pt``        the GRU baseline's (DCRNN without the graph)
``RUN_DIR/tcn.pt``        the TCN baseline's (dilated causal convolutions)
``RUN_DIR/config.yaml``   the resolved configuration
``RUN_DIR/report.json``   metrics on the test split (interface.md), plus ``report.md`` and plots
``RUN_DIR/train_log.jsonl`` a JSON record per epoch, resumption and recovery (:class:`TrainLog`)
``RUN_DIR/state_*.pt``    resumable training state

The modules: :mod:`~trafficcast.app.pipeline.data` (inputs, windows, the graph),
:mod:`~trafficcast.app.pipeline.runs` (a finished run loaded), :mod:`~trafficcast.app.pipeline.fitting`
(what every model's training shares), :mod:`~trafficcast.app.pipeline.train` with
:mod:`~trafficcast.app.pipeline.baselines`, :mod:`~trafficcast.app.pipeline.evaluate` with
:mod:`~trafficcast.app.pipeline.report`, :mod:`~trafficcast.app.pipeline.predict`,
:mod:`~trafficcast.app.pipeline.calibrate` (the prediction intervals). The model names
are in :mod:`trafficcast.models.names`.
"""

from trafficcast.app.pipeline.baselines import build_fc_lstm, build_gru, build_tcn
from trafficcast.app.pipeline.data import (
    PreparedData,
    WindowSource,
    check_data_fits,
    checkpoint_speeds,
    data_fingerprint,
    load_graph_for,
    prepare_data,
    read_graph,
    torch_supports,
)
from trafficcast.app.pipeline.evaluate import evaluate_run
from trafficcast.app.pipeline.fitting import log_stderr
from trafficcast.app.pipeline.predict import predict_run
from trafficcast.app.pipeline.report import (
    AVERAGE_KEY,
    REPORT_MINUTES,
    horizon_steps,
    report_markdown,
    trace_steps,
)
from trafficcast.app.pipeline.runs import CHECKPOINT_FILES, LoadedRun, load_run
from trafficcast.app.pipeline.train import (
    TrainLog,
    TrainOptions,
    build_dcrnn,
    load_config,
    resolve_device,
    set_threads,
    train_run,
    warm_start,
)
from trafficcast.models.names import MODEL_ORDER

__all__ = [
    "AVERAGE_KEY",
    "CHECKPOINT_FILES",
    "MODEL_ORDER",
    "REPORT_MINUTES",
    "LoadedRun",
    "PreparedData",
    "TrainLog",
    "TrainOptions",
    "WindowSource",
    "build_dcrnn",
    "build_fc_lstm",
    "build_gru",
    "build_tcn",
    "check_data_fits",
    "checkpoint_speeds",
    "data_fingerprint",
    "evaluate_run",
    "horizon_steps",
    "load_config",
    "load_graph_for",
    "load_run",
    "log_stderr",
    "predict_run",
    "prepare_data",
    "read_graph",
    "report_markdown",
    "resolve_device",
    "set_threads",
    "torch_supports",
    "trace_steps",
    "train_run",
    "warm_start",
]
