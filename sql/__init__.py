"""Package data: the project's top-level sql/ folder, shipped inside forcedphot as forcedphot.sql."""
