import BankDomain
import Eventline

/// `eventctl`: Eventline serving the sample bank domain.
@main
struct EventCtl {
    static func main() async {
        await Eventline.main(Bank.domain(name: "eventctl"))
    }
}
