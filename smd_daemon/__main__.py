from smd_daemon.cli import main

raise SystemExit(main())
