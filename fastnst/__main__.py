from fastnst.cli import main

raise SystemExit(main())
