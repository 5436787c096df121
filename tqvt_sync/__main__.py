from tqvt_sync.cli.main import main

main()
