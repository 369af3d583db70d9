"""`rgt demo`: the whole lifecycle on the embedded vast.ai emulator (job, scenario, report)."""
