"""The results of a student search as a table, CSV, JSON or plot: now ``kdzero.leaderboard.students``, whose
names stay importable from here."""
from __future__ import annotations

from kdzero.leaderboard.students import (
    STUDENT_COLUMNS,
    is_student_search,
    student_frame,
    student_plot,
    student_table,
)
from kdzero.leaderboard.students import _count as _count

__all__ = ["STUDENT_COLUMNS", "is_student_search", "student_frame", "student_plot", "student_table"]
