from satellite_asr.cli import main

raise SystemExit(main())
