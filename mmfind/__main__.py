from mmfind.cli.app import main

main()
