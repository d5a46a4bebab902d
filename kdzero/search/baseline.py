"""The CE-only baseline of a search: the student's proxy result without distillation, computed once per study
and stored there, the reference every distiller is compared with."""
from __future__ import annotations

from kdzero.proxy import ProxyResult, ProxyTask, evaluate
from kdzero.search.worker import Run, SearchObserver
from kdzero.teacher_identity import weak_teacher_warning

BASELINE_ATTR = "kdzero_baseline"


def ensure_baseline(run: Run, task: ProxyTask, observer: SearchObserver | None = None) -> ProxyResult:
    """The CE-only student's proxy result and CE curve: read from the study, or computed once and stored there
    so that every worker's divergence check uses the same reference."""
    stored = run.study.user_attrs.get(BASELINE_ATTR)
    if stored is not None and len(stored.get("ce_curve", [])) == task.config.steps:
        task.set_baseline(ProxyResult.from_dict(stored["result"]), stored["ce_curve"])
    else:
        if observer is not None:
            observer.log("training the CE-only student once: the reference every distiller must beat")
        result = evaluate(task, [None], on_step=observer.step if observer else None)[0]
        run.study.set_user_attr(BASELINE_ATTR, {"result": result.to_dict(), "ce_curve": task.baseline_ce_curve()})
    warning = weak_teacher_warning(100 * task.teacher_val_acc, 100 * task.baseline().val_acc,
                                   "the CE-only student after the proxy's steps, on the proxy validation split")
    if warning is not None and observer is not None:
        observer.log(warning)
    return task.baseline()
