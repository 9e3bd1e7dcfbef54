from clipsearch.cli import main

main()
