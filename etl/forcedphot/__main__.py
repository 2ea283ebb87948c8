from forcedphot.entry import main

main()
