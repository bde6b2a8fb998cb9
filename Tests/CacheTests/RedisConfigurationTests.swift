import Cache
import Testing

@Suite("RedisConfiguration URLs")
struct RedisConfigurationTests {
    @Test("A bare host gets port 6379, database 0 and no credentials")
    func bareHost() throws {
        let configuration = try RedisConfiguration(url: "redis://cache.internal")
        #expect(configuration.host == "cache.internal")
        #expect(configuration.port == 6379)
        #expect(configuration.database == 0)
        #expect(configuration.user == nil)
        #expect(configuration.password == nil)
    }

    @Test("Port, database and a percent-encoded password are read; the password is decoded")
    func passwordPortDatabase() throws {
        let configuration = try RedisConfiguration(url: "redis://:s3%3Ac%2Fr%40t%20x@127.0.0.1:6380/3")
        #expect(configuration.host == "127.0.0.1")
        #expect(configuration.port == 6380)
        #expect(configuration.database == 3)
        #expect(configuration.user == nil)
        #expect(configuration.password == "s3:c/r@t x")
    }

    @Test("A user and password are both read, and an @ inside the password may be left unencoded")
    func userAndPassword() throws {
        let configuration = try RedisConfiguration(url: "REDIS://alice:p@ss@localhost:7000/")
        #expect(configuration.user == "alice")
        #expect(configuration.password == "p@ss")
        #expect(configuration.host == "localhost")
        #expect(configuration.port == 7000)
        #expect(configuration.database == 0)
    }

    @Test("An IPv6 address goes in brackets, with or without a port")
    func ipv6() throws {
        let withPort = try RedisConfiguration(url: "redis://[::1]:6390/1")
        #expect(withPort.host == "::1")
        #expect(withPort.port == 6390)
        #expect(withPort.database == 1)
        #expect(try RedisConfiguration(url: "redis://[fe80::1]").port == 6379)
    }

    @Test("The description masks the password")
    func descriptionMasksPassword() throws {
        let configuration = try RedisConfiguration(url: "redis://alice:s3cret@cache:6379/2")
        #expect(configuration.description == "redis://alice:***@cache:6379/2")
        #expect(!"\(configuration)".contains("s3cret"))
    }

    @Test(
        "Malformed URLs are refused with .invalidArgument naming the problem",
        arguments: [
            ("http://cache:6379", "scheme"),
            ("cache:6379", "no scheme"),
            ("rediss://cache:6379", "TLS"),
            ("redis://", "no host"),
            ("redis://:6379", "no host"),
            ("redis://cache:port", "port"),
            ("redis://cache:70000", "port"),
            ("redis://cache:0", "port"),
            ("redis://cache:+80", "port"),
            ("redis://cache/x", "database"),
            ("redis://cache/-1", "database"),
            ("redis://cache/1/2", "database"),
            ("redis://cache?timeout=1", "query"),
            ("redis://alice@cache", "without a password"),
            ("redis://:%zz@cache", "percent"),
            ("redis://[::1", "unclosed"),
        ]
    )
    func malformed(url: String, problem: String) throws {
        let error = #expect(throws: RedisError.self) { try RedisConfiguration(url: url) }
        #expect(error?.code == .invalidArgument)
        #expect(error?.message.contains(problem) == true, "\(error?.message ?? "") should mention \(problem)")
        #expect(error?.message.contains("redis://[user[:password]@]host[:port][/db]") == true)
    }
}
