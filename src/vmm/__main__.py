from vmm.cli import main

raise SystemExit(main())
