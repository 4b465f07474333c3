from regcache.cli import main

raise SystemExit(main())
