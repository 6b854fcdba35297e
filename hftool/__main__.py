from hftool.cli import main

main()
