from vitdex.cli.main import main

main()
