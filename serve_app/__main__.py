import sys

from rayruns.serve_app.cli import main

sys.exit(main())
