"""Package data: the project's top-level datasets/ folder, shipped inside forcedphot as forcedphot.datasets."""
