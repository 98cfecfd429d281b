"""Reports: terminal tables (rich), results.json, and a self-contained HTML page."""

from torchslim.report.results import Candidate, Report
from torchslim.report.table import (
    footprint_table,
    layer_table_view,
    markdown_table,
    print_table,
    results_table,
    table_rows,
)

__all__ = [
    "Candidate",
    "Report",
    "footprint_table",
    "layer_table_view",
    "markdown_table",
    "print_table",
    "results_table",
    "table_rows",
]
