import Eventline

/// The sample bank: accounts and transfers, and the process that carries transfers out.
public enum Bank {
    /// The bank as a domain for `Eventline.main` (what `eventctl` runs) or a test.
    public static func domain(name: String = "eventctl") -> Domain {
        var domain = Domain(name: name, abstract: "Operate an Eventline event store serving the sample bank (accounts and transfers).")
        domain.register(BankAccount.self)
        domain.register(Transfer.self)
        domain.reactor("transfers") { store, logger in TransferProcess(store: store, logger: logger) }
        domain.devExamples = [
            #"curl -s -X POST {base}/v1/commands/account/42 -H 'Content-Type: application/json' -d '{"type":"OpenAccount","data":{"owner":"Ada","currency":"EUR"}}'"#,
            "curl -s {base}/v1/streams/account-42",
            "curl -s {base}/v1/read-models/account_balances/42",
        ]
        return domain
    }
}
