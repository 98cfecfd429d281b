"""Reports: terminal tables (rich) and machine-readable JSON."""

from torchslim.report.table import footprint_table, layer_table_view, print_table

__all__ = ["footprint_table", "layer_table_view", "print_table"]
