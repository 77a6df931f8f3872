from cpr_zarr.cli import main

main()
