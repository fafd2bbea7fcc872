"""The evaluation report: statistics over seeds, tables, plots and a generated verdict."""

from metapt_core.report.build import ReportResult, build_report
from metapt_core.report.stats import PairedComparison, bootstrap_ci, mean_std, paired_comparison
from metapt_core.report.tables import comparisons_table, results_frame, summary_table

__all__ = [
    "PairedComparison",
    "ReportResult",
    "bootstrap_ci",
    "build_report",
    "comparisons_table",
    "mean_std",
    "paired_comparison",
    "results_frame",
    "summary_table",
]
