from migrate.early import main

main()
