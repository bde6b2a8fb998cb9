import Eventline
import WarehouseDomain

/// `warehouse`: every command of `eventctl` (serve, dev, migrate, project, replay, …) for the
/// warehouse domain.
@main
struct WarehouseMain {
    static func main() async {
        await Eventline.main(Warehouse.domain)
    }
}
