import PostgresClient

/// Names and identifiers used for read models.
public enum ReadModelNames {
    /// The schema holding every read model (the analyst role may read it and nothing else).
    public static let schema = "read_models"

    /// Whether `name` is a valid projection name: `[a-z][a-z0-9_]*`, at most 48 characters (so
    /// that suffixed names of rebuild tables stay within PostgreSQL's 63).
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.utf8.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first), name.utf8.count <= 48 else {
            return false
        }
        return name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: "_")
        }
    }

    /// Whether `name` is a plain lower-case SQL column name.
    public static func isValidColumn(_ name: String) -> Bool {
        guard let first = name.utf8.first, (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(first) || first == UInt8(ascii: "_"),
            name.utf8.count <= 63
        else { return false }
        return name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: "_")
        }
    }

    /// The quoted, schema-qualified table `read_models."<table>"`.
    public static func qualified(_ table: String) -> String {
        "\(quoteIdentifier(schema)).\(quoteIdentifier(table))"
    }
}
