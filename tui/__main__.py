from traintop.tui.cli import main

main()
