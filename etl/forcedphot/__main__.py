from forcedphot.cli import main

raise SystemExit(main())
