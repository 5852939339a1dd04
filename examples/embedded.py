"""A query embedded in a Python script: a query function, a one-hole template, and a plain run."""
import lmql_lite


@lmql_lite.query
def capital(country):
    '''lmql
    "Q: What is the capital of {country}?\n"
    "A: [CITY]" where STOPS_BEFORE(CITY, "\n") and len(TOKENS(CITY)) < 10
    return CITY.strip()
    '''


yes_no = lmql_lite.F("Q: {question} Answer yes or no.\nA:[ANSWER]", 'ANSWER in [" yes", " no"]')

if __name__ == "__main__":
    for country in ["France", "Japan"]:
        print(country, "→", capital(country))
    print("Is the sky blue?", "→", yes_no(question="Is the sky blue?").strip())
    result = lmql_lite.run('"The opposite of hot is[W]" where W in [" cold", " warm"]\n')
    print(result.prompt)
