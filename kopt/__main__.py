from kopt.cli import main

main()
