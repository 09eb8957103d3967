"""The hot swap and the retrain job's outcomes, in-process (the worker function run
directly or on a thread; tests/test_adapt_nonblocking.py runs it in its process):
an accepted candidate is swapped in with its LSTM state re-warmed over the recent inputs
and registered; a candidate that does not win is not swapped; a failed job leaves the
forecaster running on its model."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from adapt_helpers import T0, RegimeMarket, train_tiny_model
from models.adapt.detector import Alarm, DetectorConfig, PHConfig
from models.adapt.retrainer import FineTune, RetrainJob, run_retrain
from models.adapt.swap import AdaptiveForecaster, AdaptSettings
from models.forecaster import load_forecaster
from models.inference import StatefulPredictor
from models.registry import Registry

OFF = DetectorConfig(loss=PHConfig(enabled=False), vol=PHConfig(enabled=False))


def _run(tmp_path, rows=1200):
    model = train_tiny_model(tmp_path / "tiny.pt", rows=1500, epochs=2)
    s = AdaptSettings(schedule_s=0.0, min_new_samples=10**9, rewarm_rows=200, registry=str(tmp_path / "registry"),
                      detector=OFF, tune=FineTune(epochs=10, baselines=("ewma",)))
    ad = AdaptiveForecaster(load_forecaster(model), s, work_dir=tmp_path / "work")
    mkt = RegimeMarket(seed=11)
    k = 0
    for k in range(rows):
        mkt.step(4)  # the volatility regime the model was not trained on
        ad.update(mkt.book, T0 + k * 10**9, [])
    return model, ad, mkt, k


def _job(ad, tmp_path, tune: FineTune, name="job") -> RetrainJob:
    d = tmp_path / name
    d.mkdir()
    X, ts = ad.ring.last()
    np.savez(d / "rows.npz", X=X, ts_ns=ts)  # handed over by file (the wrapper hands the arrays over in the job)
    return RetrainJob(ad.model_path, str(d / "rows.npz"), str(d), "test", 0, tune)


def test_accepted_candidate_is_swapped_rewarmed_and_registered(tmp_path, caplog):
    model, ad, mkt, k = _run(tmp_path)
    try:
        res = run_retrain(_job(ad, tmp_path, ad.s.tune))
        assert res.accepted, res.reason
        assert res.scores["candidate"] < res.scores["current"] and res.scores["candidate"] < res.scores["ewma"]
        recent = ad.ring.last(200)[0]
        with caplog.at_level(logging.WARNING, logger="mmbot.adapt"):
            ad._swap(res, T0 + k * 10**9)
            assert ad.wait_registered(60.0)
        # the state is the new model's after running over the last rewarm_rows inputs from zero
        ref = StatefulPredictor(None, res.meta["arch"], 10.0, "numba", packed=res.packed)
        ref.batch(recent)
        assert np.array_equal(ad.fc.predictor.h, ref.h) and np.array_equal(ad.fc.predictor.c, ref.c)
        # and the next grid step continues from there: the same output as the reference stepping that row
        mkt.step(4)
        ad.update(mkt.book, T0 + (k + 1) * 10**9, [])
        assert ad.fc.last_model[1] == pytest.approx(np.exp(ref.step(ad.ring.last(1)[0][0])[1]))
        # registered: a new version whose parent is the old model, with its span and scores
        sw = ad.swaps[0]
        e = next(v for v in Registry(tmp_path / "registry").versions() if v["version"] == sw["version"])
        assert e["parent"] == str(model) and e["adapt"]["holdout_qlike"] == res.scores and e["data"]["rows"] == len(ad.ring) - 1
        assert e["adapt"]["span_ns"]["holdout_end_ns"] <= T0 + k * 10**9
        line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("forecaster swap "))
        rec = json.loads(line[len("forecaster swap "):])
        assert rec["version"] == sw["version"] and rec["parent"] == str(model) and rec["rewarm_rows"] == 200
        assert ad.status()["adapt"]["model"] == sw["version"] and ad.model_path.endswith(f"{sw['version']}/model.pt")
    finally:
        ad.close()


def test_candidate_that_does_not_win_is_not_swapped_and_a_failed_job_changes_nothing(tmp_path):
    _, ad, mkt, k = _run(tmp_path, rows=900)
    ad.block_on_retrain_s = 120.0  # test hook: poll waits for the thread below
    before = ad.fc.predictor.inner
    try:
        with ThreadPoolExecutor(1) as ex:
            # a margin no fine-tuning reaches: rejected
            ad.future = ex.submit(run_retrain, _job(ad, tmp_path, replace(ad.s.tune, min_gain=0.99), "j1"))
            res = ad.poll()
            assert res is not None and not res.accepted and "does not beat" in res.reason
            assert ad.rejected == 1 and not ad.swaps and ad.fc.predictor.inner is before
            assert Registry(tmp_path / "registry").versions() == []
            # a job that fails (its data file is gone): counted, logged, the model stays
            job = _job(ad, tmp_path, ad.s.tune, "j2")
            (tmp_path / "j2" / "rows.npz").unlink()
            ad.future = ex.submit(run_retrain, job)
            assert ad.poll() is None
        assert ad.failed == 1 and ad.last_result["reason"].startswith("failed: FileNotFoundError")
        assert ad.fc.predictor.inner is before and ad.future is None
        mkt.step(4)
        f = ad.update(mkt.book, T0 + (k + 1) * 10**9, [])
        assert f.sigma is not None
    finally:
        ad.close()


def test_row_ring_keeps_the_last_rows_in_order():
    from models.adapt.swap import RowRing

    r = RowRing(5)
    assert len(r) == 0 and r.last()[0].shape[0] == 0
    for i in range(12):
        r.append(np.array([i, -i], float), 100 + i)
    X, ts = r.last()
    assert X[:, 0].tolist() == [7, 8, 9, 10, 11] and ts.tolist() == [107, 108, 109, 110, 111]
    assert r.last(2)[0][:, 1].tolist() == [-10, -11]
    X[0, 0] = 99  # a copy: the ring is not changed
    assert r.last()[0][0, 0] == 7
    r.clear()
    assert len(r) == 0


def test_a_quiet_holdout_rejects_the_candidate(tmp_path):
    """On held-out rows without a mid move the lowest forecast wins whatever it knows: such a
    holdout does not validate anything, so the job declines to judge."""
    _, ad, mkt, k = _run(tmp_path, rows=900)
    try:
        for j in range(1, 401):  # the market stops moving: the newest rows (the holdout) are quiet
            mkt._set()
            ad.update(mkt.book, T0 + (k + j) * 10**9, [])
        res = run_retrain(_job(ad, tmp_path, ad.s.tune))
        assert not res.accepted and res.reason.startswith("holdout too quiet") and res.rows["holdout_active"] == 0
        res = run_retrain(_job(ad, tmp_path, replace(ad.s.tune, min_active=0), "j0"))
        assert res.rows["holdout_active"] == 0 and not res.reason.startswith("holdout too quiet")
    finally:
        ad.close()


def test_jobs_start_on_the_schedule_and_after_a_shift_once_enough_new_rows_exist(tmp_path):
    """When jobs are submitted (the worker is stopped at once: only the submission is tested)."""
    model = train_tiny_model(tmp_path / "tiny.pt", rows=1500, epochs=2)
    s = AdaptSettings(schedule_s=100.0, min_new_samples=50, registry=str(tmp_path / "registry"), detector=OFF)
    ad = AdaptiveForecaster(load_forecaster(model), s, work_dir=tmp_path / "work")
    ad._gate_for_test = str(tmp_path / "never")  # the job would wait; it is abandoned at close
    mkt = RegimeMarket(seed=4)
    try:
        for k in range(100):  # 0 .. 99 s after the first update: the schedule is not due
            mkt.step(1)
            ad.update(mkt.book, T0 + k * 10**9, [])
        assert ad.jobs == 0 and ad.future is None
        mkt.step(1)
        ad.update(mkt.book, T0 + 100 * 10**9, [])
        assert ad.jobs == 1 and ad.future is not None and ad.job.trigger == "schedule" and ad.job.train_from == 0
        assert len(ad.job.X) == ad.rows_seen == 101 and ad.job.ts_ns[-1] == T0 + 100 * 10**9
        assert ad.status()["adapt"]["retraining"] and "retraining" in ad.adapt_line()
    finally:
        ad.close()
    # a detected shift: the job waits for min_new_samples rows after the estimated change point
    s2 = AdaptSettings(schedule_s=0.0, min_new_samples=50, registry=str(tmp_path / "registry"), detector=OFF)
    ad = AdaptiveForecaster(load_forecaster(model), s2, work_dir=tmp_path / "work2")
    ad._gate_for_test = str(tmp_path / "never")
    try:
        for k in range(200):
            mkt.step(1)
            ad.update(mkt.book, T0 + k * 10**9, [])
            if k == 120:  # as the detector would: an alarm now, change estimated at row 100
                ad.pending_alarm = Alarm("loss", "up", ad.rows_seen, 100, 60.0)
            if ad.jobs:
                break
        assert ad.jobs == 1 and ad.rows_seen == 150 and ad.job.trigger == "shift:loss:up"
        assert ad.job.train_from == len(ad.job.X) - 50  # fine-tuning starts at the change point
    finally:
        ad.close()
