from buidl_edge.cli import main

main()
