from edgereid.cli import main

main()
