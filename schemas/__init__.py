"""Package data: the project's top-level schemas/ folder, shipped inside forcedphot as forcedphot.schemas."""
